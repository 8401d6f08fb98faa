"""Pet-photo inpainting with FLUX.1-Fill-dev, served as a Cloud Run event function."""
