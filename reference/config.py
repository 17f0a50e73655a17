"""Model and data presets: `coco` is the paper's setting (ResNet-50, 1333x800,
batch 16); `small` trains on a 2-core CPU in minutes; `tiny` is for tests.
Every preset trains 12 epochs by default (iterations from the dataset size),
with the learning rate divided by 10 after epochs 8 and 11."""

EPOCHS = 12
LR_STEPS = (8, 11)

PRESETS = {
    "tiny": dict(depth=18, base_width=8, fpn_channels=32, stacked_convs=2, scale=(160, 160), batch_size=2,
                 images=8, val_images=4, image_size=128, lr=0.01, warmup_iters=5),
    "small": dict(depth=18, base_width=16, fpn_channels=64, stacked_convs=2, scale=(192, 192), batch_size=4,
                  images=96, val_images=24, image_size=192, lr=0.02, warmup_iters=50),
    "medium": dict(depth=18, base_width=64, fpn_channels=128, stacked_convs=4, scale=(512, 512), batch_size=8,
                   images=800, val_images=100, image_size=512, lr=0.01, warmup_iters=200),
    "coco": dict(depth=50, base_width=64, fpn_channels=256, stacked_convs=4, scale=(1333, 800), batch_size=16,
                 images=2000, val_images=200, image_size=800, lr=0.01, warmup_iters=500),
}

# What MMDetection's configs set differently per detector (GFL: gfl_r50_fpn_1x_coco,
# AutoAssign: autoassign_r50-caffe_fpn_1x_coco): the warm-up length (1000 vs 500
# iterations at batch 16, so x2 of each preset's) and no weight decay on norm layers.
MODEL_SETTINGS = {
    "gfl": dict(warmup_mult=1, norm_decay_mult=1.0),
    "autoassign": dict(warmup_mult=2, norm_decay_mult=0.0),
}
