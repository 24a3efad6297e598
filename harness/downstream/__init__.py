"""Downstream tasks of the paper (Sec. 4.3): classifiers and segmenters trained on real, synthetic or
hybrid data and tested on the real test split (and optionally HAM10000).

    sets.py       real / synth / hybrid training sets, the test and `--eval-data` sets
    metrics.py    macro classification metrics; Dice, IoU, ASD, HD with a rule for empty masks
    classify.py   `classify`: DenseNet121, ResNet34, SqueezeNet1.1, Swin-T with 5-fold stratified CV
    segment.py    `segment`: U-Net (ResNet34) and DeepLabV3+ (ResNet50) with Dice loss
"""
