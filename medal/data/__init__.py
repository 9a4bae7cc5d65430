"""Where images come from and how they reach the network: MedMNIST files, imported datasets, streaming, checks, preprocessing."""
