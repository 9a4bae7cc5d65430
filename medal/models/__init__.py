"""The networks: DINOv2 teachers (teachers), timm students (students) and the (28) ResNets medal registers with timm (resnet28)."""
