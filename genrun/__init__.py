"""genrun: the torch-free runtime (numpy only). Data readers live here so that
both training and serving read images the same way."""
