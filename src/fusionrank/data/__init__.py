"""Readers for public learning-to-rank data sets (LETOR / SVMlight, LightGBM ranking files)."""
from .letor import LetorData, LetorFormatError, load_letor, load_letor_files

__all__ = ["LetorData", "LetorFormatError", "load_letor", "load_letor_files"]
