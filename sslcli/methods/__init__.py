"""Method plugins, one file each, on the shared base in base.py."""
