"""Inference on any runtime, for sources beyond single images: video files (`bridgeseg.runtime.video`)."""
