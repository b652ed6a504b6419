"""DICOM input and output: reading image series, and writing the sCT and every object sent with it (RT, SR, PDF)."""
