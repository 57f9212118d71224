"""Pure-PyTorch GLM-4-Voice models and loaders of the official checkpoint folders.

Nothing here imports FastAPI or the serving layers; loaders read the official files unchanged.
"""
