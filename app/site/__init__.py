"""Site adaptation, offline: score a hospital's labelled local sample exactly as the service does, report how
the model performs there, and write a site-calibrated version with named operating points (``cxr-site``)."""
