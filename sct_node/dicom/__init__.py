"""DICOM input and output: reading image series, writing synthetic CT and phantom series."""
