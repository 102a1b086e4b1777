"""CPU engines loaded at run time beside the numpy/im2col path (``onednn``)."""
