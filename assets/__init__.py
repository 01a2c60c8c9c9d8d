"""Data files (model config folders, icons, screenshot); a package only so that wheels carry it."""
