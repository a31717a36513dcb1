"""Image and volume building blocks every pipeline may use: pixels as displayed (2D), HU volumes and
their voxel grids (3D), letterbox geometry for square model inputs, regions from probability maps.
Pure functions over pydicom datasets and numpy arrays; nothing here knows a model or a pipeline."""
