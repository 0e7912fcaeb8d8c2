"""End to end with the photo colour head: `fusionrank train` with `[encoders.attributes]` on `title_sparse`, then the
service: search explains which matched terms came from the photo, and a product sent by PUT gets its photo's colour.

A tiny fashion dataset of its own (not the session's): the job adds features and models to the workspace's store.
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def service(tmp_path_factory, fusionrank_home):
    import torch

    from fixtures_fashion import make_tiny_fashion, tiny_config_dict
    from fusionrank.experiment import ExperimentConfig, train
    from serving_fixtures import make_service

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("colourdata")
    data = make_tiny_fashion(root / "tinyfashion", audio=False)
    cfg = tiny_config_dict(data.root, data={"title_field": "title_sparse", "train_title_fields": ["title_sparse"]},
                           modalities=["text", "image"], understanding={"enabled": False})
    cfg["encoders"]["attributes"] = {"name": "colour_head", "args": {"threshold": 0.3, "min_examples": 5, "C": 1.0,
                                                                     "valid_fraction": 0.2}}
    model = root / "model"
    train(ExperimentConfig.model_validate(cfg), model, log=lambda m: None, progress=False, build_index=False)
    svc = make_service(model, root / "svc")
    yield svc, data
    svc.close()
    torch.set_num_threads(threads)


def test_search_says_which_matched_terms_came_from_the_photo(service):
    svc, data = service
    attrs = data.attrs.set_index("product_id")
    hits = svc.search("red tshirt", k=10, record=False)["results"]
    from_photo = [h for h in hits if h["matched_from_photo"]]
    assert from_photo, "an expanded product matches the colour by its photo"
    for h in from_photo:
        pid = h["product_id"]
        assert h["matched_from_photo"] == ["red"] and "red" in h["matched_terms"]["title"]
        assert "red" not in attrs.loc[pid, "title_sparse"].lower()  # its indexed title states no colour
    for h in hits:
        if "red" in attrs.loc[h["product_id"], "title_sparse"].lower():
            assert h["matched_from_photo"] == []  # a colour its own title states is not the photo's


def test_a_put_product_gets_its_photos_colour_and_is_found_by_it(service):
    svc, data = service
    a = data.attrs
    src = a[(a["colour"] == "Green") & a["has_image"] & (a["title"] != a["title_sparse"])].iloc[0]
    put = svc.put_product({"product_id": "put-green", "title": "Zorblax Men Tshirt", "image": str(data.root / "images" / f"{src['product_id']}.jpg")})
    assert put["encoded"]["photo_colour"] == "green"
    assert svc.index.lex_text["title"][svc.index.row_of["put-green"]] == "Zorblax Men Tshirt green"
    hit = next(h for h in svc.search("zorblax green tshirt", k=5, record=False)["results"] if h["product_id"] == "put-green")
    assert hit["matched_from_photo"] == ["green"] and set(hit["matched_terms"]["title"]) == {"zorblax", "green", "tshirt"}
