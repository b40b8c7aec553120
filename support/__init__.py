"""Support code: everything a chapter needs that is not the chapter's idea.

Validation at the edges, dataset downloads and checksums, devices and DDP, resume state and
signals, memory measurement, metric files and tables, and limits for hostile files. Support
sits *below* the chapters: no module here imports a chapter (tests/test_layout.py checks), so
a reader can open any chapter knowing that nothing of its idea is hidden here.
"""
