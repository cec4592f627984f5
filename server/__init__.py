"""fedforget's Flower ServerApp."""
