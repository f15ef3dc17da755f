"""NO_COLOR without losing text: greys that keep their distance from the background.

Textual honours NO_COLOR by turning every colour into the grey of the same luminance. Red and
blue are dark, so "4 incomplete" (bold red) became grey 237 on the 233 background: there, but
unreadable. `ReadableMonochrome` does the same conversion and then moves any foreground grey
that is too close to its background's to the far end of the scale, so every word stays legible;
the bars never relied on colour (each category has its own glyph, ui/widgets/render.py).
"""

from __future__ import annotations

from functools import lru_cache

from rich.segment import Segment
from rich.style import Style
from textual.color import Color
from textual.filter import Monochrome

MIN_CONTRAST = 0.35
"""Least difference in brightness (0-1) between a foreground grey and its background."""


def _grey(color: Color) -> float:
    return color.monochrome.brightness


@lru_cache(1024)
def readable_style(style: Style, background: Color) -> Style:
    """`style` in greys, its foreground moved away from the background where they are close."""
    fg = Color.from_rich_color(style.color).monochrome if style.color else None
    bg = Color.from_rich_color(style.bgcolor).monochrome if style.bgcolor else None
    under = bg or background.monochrome
    if fg is not None and abs(fg.brightness - under.brightness) < MIN_CONTRAST:
        fg = Color(235, 235, 235) if under.brightness < 0.5 else Color(20, 20, 20)
    return style + Style.from_color(
        fg.rich_color if fg is not None else None, bg.rich_color if bg is not None else None
    )


class ReadableMonochrome(Monochrome):
    """Textual's Monochrome filter, with a floor on foreground contrast."""

    def apply(self, segments: list[Segment], background: Color) -> list[Segment]:
        """Greys for every segment; none too close to what is behind it."""
        return [
            Segment(text, readable_style(style, background) if style else style, None)
            for text, style, _ in segments
        ]
