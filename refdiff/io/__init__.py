"""refdiff.io: files in and out (plumbing, no math).

    checkpoint.py  safetensors arrays + a JSON file, written atomically, loaded without unpickling
    images.py      PNG grids of images and scatter plots of 2-D points
"""
