// Small static programs for the local e2e cluster's images (e2e/images.py).
module roster.dev/e2e/images

go 1.25.0
