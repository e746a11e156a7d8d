"""Class colours: the PASCAL VOC colour map and the colour of ignored pixels.

A leaf module (numpy-free, no plotting): models, datasets and the pictures all take their
colours from here.
"""

from __future__ import annotations

Color = tuple[int, int, int]

#: Colour of ignored pixels (label 255): the PASCAL VOC "void" boundary colour.
IGNORE_COLOR: Color = (224, 224, 192)


def color_palette(num_classes: int) -> list[Color]:
    """PASCAL VOC colour map: the bits of the class id are spread over R, G, B from the high bit down.

    Class 0 is black, 1 is (128, 0, 0), 2 is (0, 128, 0), 3 is (128, 128, 0), ... Works for any count;
    the first 2**24 colours are all distinct.
    """
    palette = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette
