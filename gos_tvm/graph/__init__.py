"""Model import, op-site discovery, substitution, activation capture, compilation and export."""
from .importer import UnsupportedModelError, from_onnx, from_torch, model_inputs, num_inputs
from .sites import SITE_KINDS, Site, SiteAnalysis, SkippedSite, analyze, find_sites, find_skipped
