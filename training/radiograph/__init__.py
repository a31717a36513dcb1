"""The radiograph fracture model: FracAtlas data, training, evaluation, model card."""
