"""INSTRUCTOR ONLY: model answers of the assignments and exercises, the wrong variants, the fixtures writer.

Not part of what students receive: `make student-copy` (scripts/make_student_copy.py) copies the repository without
this directory. See instructor/README.md.
"""
