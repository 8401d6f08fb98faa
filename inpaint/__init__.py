"""Pet-photo inpainting with FLUX.1-Fill-dev, served as a Cloud Run event function.

Shared by every room: ``config`` (the settings), ``errors`` (every exception shared between
rooms), ``logs``; ``cli`` is ``python -m inpaint``. The rooms, one per reason to change:
``serving`` (the serving process: how requests arrive, how the process stays healthy),
``session`` (one session's job, from the delivered event to its recorded outcome), ``photo``
(pixels: untrusted bytes in, JPEG bytes out), ``model`` (FLUX: loading, options, prompts,
weights) and ``randmodel`` (random models in the real weights' layout, never served).
"""
