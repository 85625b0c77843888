"""Mesh recovery with test-time optimisation on your own images (see utils/demo.py).

    python demo.py --checkpoint ckpt/cliff_hrnet_3dpw.pt --backbone hrnet \
        --img_dir my_images --openpose_dir my_openpose --out_dir demo_out
"""
from utils.demo import main, parse_demo

if __name__ == "__main__":
    main(parse_demo())
