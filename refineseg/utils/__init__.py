"""Small shared helpers with no model or data knowledge: typed configs, atomic files, DDP, palettes."""
