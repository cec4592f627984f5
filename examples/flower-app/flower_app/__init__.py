"""flower_app: Flower's PyTorch quickstart on the digits, with unlearning."""
