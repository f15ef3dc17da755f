"""Framework enums that real checkpoints call on load, declared to the restricted unpickler.

An enum member pickles as ``REDUCE(EnumClass, (value,))``: a call, but one that only looks a
value up. Everything else a pickle calls outside the unpickler's allowlist is reported as "would
run X on load" (formats.unpickler). The names are the enums torch.save meets in the files these
frameworks write: HF ``training_args.bin`` (transformers.training_args.TrainingArguments fields,
accelerate's distributed state) and DeepSpeed optimizer states (``zero_stage``).
"""

from __future__ import annotations

from ckpttui.formats.unpickler import allow_data_calls

ENUM_CALLS = frozenset(
    {
        # transformers/trainer_utils.py, training_args.py, debug_utils.py, utils/generic.py
        *(
            f"transformers.trainer_utils.{n}"
            for n in (
                "IntervalStrategy",
                "SaveStrategy",
                "HubStrategy",
                "HPSearchBackend",
                "SchedulerType",
                "FSDPOption",
                "EvaluationStrategy",
                "ShardedDDPOption",
            )
        ),
        "transformers.training_args.OptimizerNames",
        "transformers.training_args.ParallelMode",
        "transformers.debug_utils.DebugOption",
        "transformers.utils.generic.PaddingStrategy",
        "transformers.utils.generic.TensorType",
        # accelerate/utils/dataclasses.py (TrainingArguments keeps accelerate's state)
        *(
            f"accelerate.utils.dataclasses.{n}"
            for n in (
                "DistributedType",
                "SageMakerDistributedType",
                "ComputeEnvironment",
                "DynamoBackend",
                "LoggerType",
                "PrecisionType",
                "RNGType",
                "CustomDtype",
                "DDPCommunicationHookType",
            )
        ),
        # deepspeed/runtime/zero/config.py, offload_config.py, fp16/loss_scaler.py
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.runtime.zero.offload_config.OffloadDeviceEnum",
        "deepspeed.runtime.zero.offload_config.OffloadStateTypeEnum",
        "deepspeed.runtime.fp16.loss_scaler.LossScaleProfile",
    }
)

allow_data_calls(ENUM_CALLS)
