"""Mesh recovery with test-time optimisation on your own images (see train/demo.py).

    python demo.py --checkpoint ckpt/cliff_hrnet_3dpw.pt --backbone hrnet \
        --img_dir my_images --openpose_dir my_openpose --out_dir demo_out
"""
from utils.cli import run

if __name__ == "__main__":
    from train.demo import main, parse_demo
    run(lambda argv: main(parse_demo(argv)))   # one-line errors, exit code 2
