"""Audio: the fixed-point front end (16 kHz int16 samples -> int8 log-mel frames)."""
