"""The BCD engine: the network (``network``), the block solvers (``blocks``, ``linalg``, ``inner``), the
trainer interface (``trainer``), what every scheme shares (``scheme``) and one module per algorithm
(``two_splitting``, ``three_splitting``, ``resnet``)."""
