"""The colour of each finding category wherever fracnode draws a result: overlays, previews."""

COLOURS: dict[str, tuple[int, int, int]] = {  # by category (node.records.CATEGORIES)
    "fracture": (255, 48, 48),
    "suspicious": (255, 200, 0),
    "negative": (80, 200, 120),
}
