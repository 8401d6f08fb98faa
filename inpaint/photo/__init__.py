"""Pixels: untrusted upload bytes in, edited and preview JPEG bytes out; no torch, no cloud.

Rooms: ``upload_checks`` (container structure, before any decoder runs), ``sandbox`` (the limited
child process each decode runs in) with ``decode_preload`` (what its fork server imports once),
``decoding`` (the checks every input goes through, the photo as RGB), ``mask`` (the mask rules:
alpha or luminance, threshold, resizing, aspect ratio), ``imaging`` (crop plan, model inputs,
paste-back, JPEG outputs) and ``repaint`` (photo + mask bytes -> edited/preview JPEG bytes
around one model call: the part of a job the CLI runs too).
"""
