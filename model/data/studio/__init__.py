"""Synthetic studio: stylized talking people with ground truth for every condition."""
