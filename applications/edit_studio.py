"""A local web page to draw an edit on the congealed template and preview its propagation.

    python -m applications.edit_studio --ckpt CKPT --real_data_path DATA [--port 7860] [--host 127.0.0.1]

The page shows the template (the average congealed image, per cluster for
clustering models; computed once and cached), lets you paint a mask or
place an RGBA object on it, propagates it onto a chosen set of images with
the functions ``applications.propagate_to_images`` uses, and exports the
propagated images at full resolution as a zip (into --out); when
--real_data_path is a video file, also the propagated mp4 of the whole video
at its own size and frame rate (``applications.studio.video_export``; a folder of
frames or an LMDB given --fps too, at --real_size). The label saved
from the page is the ``--label_path`` file the command line takes. The warps
of the first min(--n_mean, --keep_warps) images are kept, so their previews
run no network pass (only the splat).

Needs the optional web dependencies: pip install -e '.[studio]'.
It binds to 127.0.0.1 unless --host says otherwise: it has no authentication.
"""
from applications.studio.launch import bind_socket, build_engine, page_url
from utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv=None):
    opt, engine = build_engine(argv)
    import uvicorn

    from applications.studio.server import build_app

    sock = bind_socket(opt.host, opt.port)
    # The URL line first: the template's background thread prints too, and print() from two threads can
    # interleave within a line.
    print(f'Edit studio: open {page_url(sock)} in a browser (Ctrl+C stops it). Exports go to {opt.out}',
          flush=True)
    engine.request_average(engine.default_cluster())
    config = uvicorn.Config(build_app(engine), log_level='warning', access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == '__main__':
    main()
