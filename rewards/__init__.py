"""Video reward models behind one interface (VQ, MQ, TA), with saliency."""
