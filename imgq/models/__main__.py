"""`python -m imgq.models --download-resnet50`: fetch ResNet50's ImageNet weights on purpose (98 MB)."""
from imgq.models.resnet50 import main

if __name__ == "__main__":
    raise SystemExit(main())
