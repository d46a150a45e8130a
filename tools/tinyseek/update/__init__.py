"""Model updates over the air: the slot image a firmware runs its weights from, signed delta
packages between two int8 models, and pushing them to a device (docs/updates.md)."""
