"""Versioned HDF5 model artifacts and the preprocessing contract that travels with them."""
