// cdd_engine._native: Python bindings of libcdd_engine.
//
// Frames are read in place from numpy arrays (no copy): any uint8 array whose pixels are
// packed inside a row (channel stride 1 byte, pixel stride = channels bytes) with a positive
// row stride, e.g. a crop of a bigger frame. Other layouts get a ValueError that says how to
// fix them. The GIL is released while the engine runs, so Python threads score in parallel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "cdd/cdd.hpp"

namespace py = pybind11;

namespace {

cdd::PixelFormat parse_format(const std::string& s) {
    std::string u;
    for (char c : s) u += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    // exactly the names of cdd_engine/runtime/frames.py PIXEL_FORMATS (case-insensitive), so a
    // frame the Python runtime refuses is refused here too
    if (u == "RGB") return cdd::PixelFormat::RGB8;
    if (u == "BGR") return cdd::PixelFormat::BGR8;
    if (u == "MONO") return cdd::PixelFormat::Mono8;
    throw py::value_error("pixel_format must be one of 'RGB', 'BGR', 'MONO', got '" + s + "'");
}

cdd::MapOutput parse_map_size(const std::string& s) {
    if (s == "model") return cdd::MapOutput::ModelSize;
    if (s == "input") return cdd::MapOutput::InputSize;
    throw py::value_error("map_size must be 'model' or 'input', got '" + s + "'");
}

std::string shape_of(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string strides_of(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.strides(d));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

/// A view of one (H, W), (H, W, 1) or (H, W, 3) uint8 frame, or a TypeError / ValueError.
cdd::ImageView view_of(const py::array& a, cdd::PixelFormat fmt, std::size_t index) {
    const std::string where = "image " + std::to_string(index) + ": ";
    if (!py::isinstance<py::array_t<std::uint8_t>>(a) || a.dtype().kind() != 'u' || a.itemsize() != 1)
        throw py::type_error(where + "frames must be uint8 arrays, got dtype " + std::string(py::str(a.dtype())));
    const int want = cdd::channels(fmt);
    int c = 1;
    if (a.ndim() == 3) {
        c = static_cast<int>(a.shape(2));
    } else if (a.ndim() != 2) {
        throw py::value_error(where + "a frame must be (H, W) or (H, W, C), got shape " + shape_of(a));
    }
    if (c != want)
        throw py::value_error(where + "pixel_format " + cdd::to_string(fmt) + " needs " + std::to_string(want) +
                              " channel(s), got shape " + shape_of(a));
    if (a.shape(0) == 0 || a.shape(1) == 0)
        throw py::value_error(where + "zero-sized frame of shape " + shape_of(a));
    const bool packed_pixels = (a.ndim() == 2 || a.strides(2) == 1 || a.shape(2) == 1) && a.strides(1) == c;
    if (!packed_pixels || a.strides(0) <= 0)
        throw py::value_error(where + "cannot read this array in place: strides " + strides_of(a) + " for shape " +
                              shape_of(a) + "; rows must have positive stride and pixels must be packed (" +
                              std::to_string(c) + " byte(s) apart, channels 1 byte apart). Pass "
                              "numpy.ascontiguousarray(frame)");
    if (a.shape(0) > INT32_MAX || a.shape(1) > INT32_MAX) throw py::value_error(where + "frame too large");
    cdd::ImageView v;
    v.data = static_cast<const std::uint8_t*>(a.data());
    v.width = static_cast<int>(a.shape(1));
    v.height = static_cast<int>(a.shape(0));
    v.stride_bytes = static_cast<std::size_t>(a.strides(0));
    v.format = fmt;
    return v;
}

/// Frames from a list/tuple of arrays or one (N, H, W[, C]) array; keeps them alive in `keep`.
std::vector<cdd::ImageView> views_of(const py::handle& images, cdd::PixelFormat fmt, std::vector<py::array>& keep) {
    if (py::isinstance<py::array>(images)) {
        py::array batch = py::reinterpret_borrow<py::array>(images);
        if (batch.ndim() != 3 && batch.ndim() != 4)
            throw py::value_error("a batch array must be (N, H, W) or (N, H, W, C), got shape " + shape_of(batch));
        if (batch.ndim() == 3 && fmt != cdd::PixelFormat::Mono8)
            throw py::value_error("a (N, H, W) batch is single-channel: pass pixel_format='MONO', got " +
                                  std::string(cdd::to_string(fmt)));
        for (py::ssize_t i = 0; i < batch.shape(0); ++i) keep.push_back(batch[py::int_(i)].cast<py::array>());
    } else if (py::isinstance<py::list>(images) || py::isinstance<py::tuple>(images)) {
        for (const py::handle& h : images) {
            if (!py::isinstance<py::array>(h))
                throw py::type_error("image " + std::to_string(keep.size()) + ": expected a numpy array, got " +
                                     std::string(py::str(py::type::of(h).attr("__name__"))));
            keep.push_back(py::reinterpret_borrow<py::array>(h));
        }
    } else {
        throw py::type_error("images must be a list of numpy uint8 arrays or one (N, H, W[, C]) array");
    }
    if (keep.empty()) throw py::value_error("empty batch: need at least one frame");
    std::vector<cdd::ImageView> views;
    for (std::size_t i = 0; i < keep.size(); ++i) views.push_back(view_of(keep[i], fmt, i));
    return views;
}

/// The Python runtime's NonFiniteOutputError when it defines one, else RuntimeError (looked
/// up when needed: the module must import without the Python runtime).
py::object non_finite_error() {
    try {
        py::module_ errors = py::module_::import("cdd_engine.errors");
        if (py::hasattr(errors, "NonFiniteOutputError")) return errors.attr("NonFiniteOutputError");
    } catch (const py::error_already_set&) {
    }
    return py::reinterpret_borrow<py::object>(PyExc_RuntimeError);
}

py::tuple score(const cdd::Engine& engine, const py::handle& images, const std::string& pixel_format,
                bool return_maps, const std::string& map_size) {
    const cdd::PixelFormat fmt = parse_format(pixel_format);
    cdd::ScoreOptions opt;
    opt.map = return_maps ? parse_map_size(map_size) : cdd::MapOutput::None;
    std::vector<py::array> keep;
    std::vector<cdd::ImageView> views = views_of(images, fmt, keep);
    const std::size_t n = views.size();
    py::array_t<float> scores(static_cast<py::ssize_t>(n));
    py::array_t<bool> anomalous(static_cast<py::ssize_t>(n));
    std::vector<float*> map_ptrs(n, nullptr);
    py::object maps = py::none();
    if (opt.map == cdd::MapOutput::ModelSize) {
        const auto& info = engine.info();
        py::array_t<float> m({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(info.image_height),
                              static_cast<py::ssize_t>(info.image_width)});
        float* base = m.mutable_data();
        const std::size_t full = static_cast<std::size_t>(info.image_height) * info.image_width;
        for (std::size_t i = 0; i < n; ++i) map_ptrs[i] = base + i * full;
        maps = std::move(m);
    } else if (opt.map == cdd::MapOutput::InputSize) {
        py::list lst;
        for (std::size_t i = 0; i < n; ++i) {
            py::array_t<float> m({static_cast<py::ssize_t>(views[i].height), static_cast<py::ssize_t>(views[i].width)});
            map_ptrs[i] = m.mutable_data();
            lst.append(m);
        }
        maps = std::move(lst);
    }
    float* sp = scores.mutable_data();
    bool* ap = anomalous.mutable_data();
    {
        py::gil_scoped_release release;
        engine.score_into(views.data(), n, opt, sp, ap, map_ptrs.data());
    }
    return py::make_tuple(scores, maps, anomalous, engine.threshold());
}

/// (B, C, h, w) float32/float16 C-contiguous array -> FeaturePair of image 0 (batch via offsets).
cdd::kernels::FeaturePair feature_of(const py::array& t, const py::array& s, std::size_t scale, py::ssize_t batch) {
    const std::string where = "scale " + std::to_string(scale) + ": ";
    if (t.ndim() != 4 || s.ndim() != 4) throw py::value_error(where + "features must be (B, C, h, w)");
    for (int d = 0; d < 4; ++d)
        if (t.shape(d) != s.shape(d))
            throw py::value_error(where + "teacher " + shape_of(t) + " and student " + shape_of(s) + " differ");
    if (t.shape(0) != batch) throw py::value_error(where + "batch size differs between scales");
    const bool f32 = py::isinstance<py::array_t<float>>(t) && t.dtype().kind() == 'f' && t.itemsize() == 4;
    const bool f16 = t.dtype().kind() == 'f' && t.itemsize() == 2;
    if (!(f32 || f16) || !t.dtype().is(s.dtype()))
        throw py::type_error(where + "features must both be float32 or both float16");
    for (const py::array* a : {&t, &s})
        if (!(a->flags() & py::array::c_style))
            throw py::value_error(where + "features must be C-contiguous (numpy.ascontiguousarray)");
    cdd::kernels::FeaturePair p;
    p.teacher = t.data();
    p.student = s.data();
    p.dtype = f32 ? cdd::kernels::DType::Float32 : cdd::kernels::DType::Float16;
    p.channels = static_cast<int>(t.shape(1));
    p.height = static_cast<int>(t.shape(2));
    p.width = static_cast<int>(t.shape(3));
    return p;
}

py::tuple anomaly_map(const std::vector<py::array>& teacher, const std::vector<py::array>& student,
                      std::pair<int, int> image_size, const std::string& mode, double sigma, double truncate,
                      double eps, int num_threads) {
    if (teacher.empty() || teacher.size() != student.size())
        throw py::value_error("need the same non-zero number of teacher and student scales");
    const py::ssize_t batch = teacher[0].ndim() == 4 ? teacher[0].shape(0) : -1;
    if (batch <= 0) throw py::value_error("features must be non-empty (B, C, h, w) arrays");
    std::vector<cdd::kernels::FeaturePair> levels;
    std::vector<std::pair<int, int>> scales;
    for (std::size_t s = 0; s < teacher.size(); ++s) {
        levels.push_back(feature_of(teacher[s], student[s], s, batch));
        scales.emplace_back(levels.back().height, levels.back().width);
    }
    if (mode != "add" && mode != "mul") throw py::value_error("mode must be 'add' or 'mul', got '" + mode + "'");
    cdd::kernels::MapSettings st;
    st.mode = mode == "add" ? cdd::kernels::MapMode::Add : cdd::kernels::MapMode::Mul;
    st.sigma = sigma;
    st.truncate = truncate;
    st.eps = eps;
    // validates sigma / truncate (MAX_BLUR_RADIUS) and the map size (MAX_MAP_PIXELS) before
    // anything is allocated: cdd::Error -> ValueError
    cdd::kernels::AnomalyMap amap(image_size.first, image_size.second, scales, st);
    py::array_t<float> maps({batch, static_cast<py::ssize_t>(image_size.first), static_cast<py::ssize_t>(image_size.second)});
    py::array_t<float> scores(batch);
    float* mp = maps.mutable_data();
    float* sp = scores.mutable_data();
    {
        py::gil_scoped_release release;
        amap.run_batch(levels.data(), static_cast<std::size_t>(batch), mp, sp, num_threads);
    }
    return py::make_tuple(maps, scores);
}

py::array_t<float> preprocess(const py::handle& images, const std::string& pixel_format, std::pair<int, int> size,
                              const std::vector<float>& mean, const std::vector<float>& std, int num_threads) {
    const cdd::PixelFormat fmt = parse_format(pixel_format);
    if (mean.size() != 3 || std.size() != 3) throw py::value_error("mean and std must have 3 values (R, G, B)");
    cdd::kernels::Normalization norm;
    for (int c = 0; c < 3; ++c) {
        norm.mean[c] = mean[c];
        norm.std[c] = std[c];
    }
    // checked before the output is allocated from these numbers
    if (size.first <= 0 || size.second <= 0 ||
        static_cast<std::uint64_t>(size.first) * static_cast<std::uint64_t>(size.second) > cdd::limits::kMaxMapPixels)
        throw py::value_error("size must be positive with height * width <= MAX_MAP_PIXELS = " +
                              std::to_string(cdd::limits::kMaxMapPixels) + ", got (" + std::to_string(size.first) +
                              ", " + std::to_string(size.second) + ")");
    std::vector<py::array> keep;
    std::vector<cdd::ImageView> views = views_of(images, fmt, keep);
    const std::size_t n = views.size();
    py::array_t<float> out({static_cast<py::ssize_t>(n), py::ssize_t(3), static_cast<py::ssize_t>(size.first),
                            static_cast<py::ssize_t>(size.second)});
    float* op = out.mutable_data();
    const std::size_t plane = static_cast<std::size_t>(3) * size.first * size.second;
    {
        py::gil_scoped_release release;
        for (std::size_t i = 0; i < n; ++i)
            cdd::kernels::preprocess(views[i], size.first, size.second, norm, op + i * plane, num_threads);
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "libcdd_engine bindings: the C++ scoring engine and its CPU kernels";
    // cdd::Error -> ValueError / FileNotFoundError / RuntimeError by its code
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const cdd::Error& e) {
            switch (e.code()) {
                case cdd::ErrorCode::InvalidArgument:
                case cdd::ErrorCode::EngineFormat:
                    PyErr_SetString(PyExc_ValueError, e.what());
                    return;
                case cdd::ErrorCode::NotFound:
                    PyErr_SetString(PyExc_FileNotFoundError, e.what());
                    return;
                case cdd::ErrorCode::NonFinite:
                    PyErr_SetObject(non_finite_error().ptr(), py::str(e.what()).ptr());
                    return;
                default:
                    PyErr_SetString(PyExc_RuntimeError, e.what());
                    return;
            }
        }
    });

    m.attr("__version__") = cdd::version();
    m.attr("WITH_OPENVINO") = cdd::built_with_openvino();
    m.attr("WITH_TENSORRT") = cdd::built_with_tensorrt();
    m.attr("WITH_CUDA") = cdd::built_with_cuda();
    m.attr("WITH_AOTI") = cdd::built_with_aoti();
    // the torch version an aoti engine must have been built with ("" without AOTI); the Python
    // side also refuses this module's aoti path in a process running another torch
    m.attr("AOTI_TORCH_VERSION") = std::string(cdd::aoti_torch_version());

    py::class_<cdd::Engine>(m, "Engine", R"doc(
Engine(engine_dir, num_threads=0, num_streams=1, device="CPU", threshold=None, sensitivity=None,
       verify_hashes=True, static_shapes=True, distances_in_network=True, frames_per_request=0)

The C++ engine on an engine directory. Thread-safe; the GIL is released while scoring.
num_threads: CPU threads (0 = all cores); num_streams: inference requests in the pool;
frames_per_request: the most frames per request when a call is split over several streams
(0: 4 for INT8 engines, 1 otherwise; at most max_batch);
threshold overrides the calibrated threshold; sensitivity divides it instead.)doc")
        .def(py::init([](const std::string& engine_dir, int num_threads, int num_streams, const std::string& device,
                         std::optional<float> threshold, std::optional<float> sensitivity, bool verify_hashes,
                         bool static_shapes, bool distances_in_network, int frames_per_request) {
                 cdd::EngineOptions o;
                 o.num_threads = num_threads;
                 o.num_streams = num_streams;
                 o.device = device;
                 o.threshold = threshold;
                 o.sensitivity = sensitivity;
                 o.verify_hashes = verify_hashes;
                 o.static_shapes = static_shapes;
                 o.distances_in_network = distances_in_network;
                 o.frames_per_request = frames_per_request;
                 py::gil_scoped_release release;  // compiling the model takes a while
                 return new cdd::Engine(engine_dir, o);
             }),
             py::arg("engine_dir"), py::arg("num_threads") = 0, py::arg("num_streams") = 1, py::arg("device") = "CPU",
             py::arg("threshold") = py::none(), py::arg("sensitivity") = py::none(), py::arg("verify_hashes") = true,
             py::arg("static_shapes") = true, py::arg("distances_in_network") = true,
             py::arg("frames_per_request") = 0)
        .def("score", &score, py::arg("images"), py::arg("pixel_format") = "RGB", py::arg("return_maps") = true,
             py::arg("map_size") = "model", R"doc(
score(images, pixel_format="RGB", return_maps=True, map_size="model")
    -> (scores, maps, is_anomalous, threshold)

images: list of uint8 arrays (H, W, 3) / (H, W) of any sizes, or one (N, H, W[, C]) array;
pixel_format: "RGB", "BGR" or "MONO". scores: float32 (N,); is_anomalous: bool (N,);
threshold: float. maps: None when return_maps is False; float32 (N, H, W) at the model
resolution for map_size="model"; a list of (h_i, w_i) arrays at each frame's size for "input".)doc")
        .def_property_readonly("image_size", [](const cdd::Engine& e) {
            return py::make_tuple(e.info().image_height, e.info().image_width);
        })
        .def_property_readonly("threshold", &cdd::Engine::threshold)
        .def_property_readonly("calibrated_threshold", [](const cdd::Engine& e) { return e.info().calibrated_threshold; })
        .def_property_readonly("max_batch", [](const cdd::Engine& e) { return e.info().max_batch; })
        .def_property_readonly("backend", [](const cdd::Engine& e) { return e.info().backend; })
        .def_property_readonly("device", [](const cdd::Engine& e) { return e.info().device; })
        .def_property_readonly("model_file", [](const cdd::Engine& e) { return e.info().model_file; })
        .def_property_readonly("num_streams", [](const cdd::Engine& e) { return e.info().num_streams; })
        .def_property_readonly("frames_per_request", [](const cdd::Engine& e) { return e.info().frames_per_request; })
        .def_property_readonly("num_threads", [](const cdd::Engine& e) { return e.info().num_threads; })
        .def_property_readonly("engine_dir", [](const cdd::Engine& e) { return e.info().engine_dir; })
        .def("__repr__", [](const cdd::Engine& e) {
            const auto& i = e.info();
            return "<cdd_engine._native.Engine " + i.backend + " on " + i.device + ", " + std::to_string(i.image_height) +
                   "x" + std::to_string(i.image_width) + ", max_batch " + std::to_string(i.max_batch) + ">";
        });

    m.def("anomaly_map", &anomaly_map, py::arg("teacher"), py::arg("student"), py::arg("image_size"),
          py::arg("mode") = "add", py::arg("sigma") = 4.0, py::arg("truncate") = 4.0, py::arg("eps") = 1e-8,
          py::arg("num_threads") = 1,
          "Fused C++ anomaly map: lists of (B, C_s, h_s, w_s) float32/float16 arrays -> (maps (B, H, W), scores (B,)).");
    m.def("preprocess", &preprocess, py::arg("images"), py::arg("pixel_format"), py::arg("size"), py::arg("mean"),
          py::arg("std"), py::arg("num_threads") = 1,
          "C++ pre-processing: uint8 frames -> normalised float32 (N, 3, H, W) at `size`.");
}
