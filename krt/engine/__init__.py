"""Turning text into audio: segmentation, the synthesis pipeline, and (later) scheduling."""
