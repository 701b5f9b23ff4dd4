"""A model's first run in the launched app: the progress line says which component is loading."""


def test_the_progress_line_says_what_is_loading(client, running_app):
    """It used to say "Step 0/1 · 0.0 s · idle" until the model was loaded (seconds for SD 1.5 here)."""
    from engine.testing.tiny import tiny_sd_pipeline

    tiny_sd_pipeline(3).save_pretrained(running_app[2] / "models" / "fresh-sd")  # never loaded by the worker yet
    job = client.submit(model="fresh-sd", prompt="seven", negative_prompt="", steps=2, guidance_scale=7.5,
                        scheduler="DDIM", seed=1, width=32, height=32, api_name="/txt2img")
    list(job)
    lines = [update[2] for update in job.outputs()]
    loading = [line for line in lines if "Loading model" in line]
    assert [line.split("Loading model ")[1].split("</div>")[0] for line in loading] == [
        f"fresh-sd: {name} ({i} of 5)" for i, name in enumerate(("scheduler", "text_encoder", "tokenizer", "unet",
                                                                   "vae"), 1)]
    assert lines.index(loading[-1]) < next(i for i, line in enumerate(lines) if "Step 1/" in line)
