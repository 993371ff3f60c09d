"""The kit's shipped checkpoints and their cards; installed with the wheel as `fpdm_core.shipped` (package data).

Find them with `fpdm_core.assets`, never by this folder's path.
"""
