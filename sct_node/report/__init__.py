"""The QA report bundle: PDF, DICOM objects and the folder they are built from.

Data flows one way: the QA folder (``qa.json`` + ``qa_arrays.npz``) and the
sCT series are read into a :class:`~sct_node.report.data.ReportData`, from
which the PDF, the Encapsulated PDF, the Structured Report, the RT Structure
Set, the RT Plan and the RT Dose are written.
"""
