// classify: run the bundle's TorchScript model (model.pt) with LibTorch on one preprocessed input and
// print the top-k classes as JSON. Written by onnx-pipeline into a torchscript bundle (cpp/README.md).
//
// The input is a tensor file that `onnx-pipeline preprocess IMAGE BUNDLE -o x.bin` writes (C++ has no
// standard image decoder, so the bundle's preprocessing runs there). Its layout, little-endian:
//   8 bytes  magic "OPTENSOR"
//   uint32   version (1)
//   uint32   dtype (1: float32)
//   uint32   ndim
//   uint32   reserved (0)
//   int64    dims[ndim]
//   float32  data[prod(dims)], C order
//
// usage: classify MODEL.pt INPUT.bin [--labels labels.txt] [--top-k K] [--repeat N]
// --repeat N: after the first run and up to 10 warm-up runs (TorchScript optimises a graph on its first
// calls), time N more runs and add latency_ms to the JSON.
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr char kMagic[8] = {'O', 'P', 'T', 'E', 'N', 'S', 'O', 'R'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kFloat32 = 1;
constexpr uint32_t kMaxDims = 8;

template <typename T>
T read_value(std::ifstream& in, const std::string& path) {
  T value{};
  in.read(reinterpret_cast<char*>(&value), sizeof(T));
  if (!in) throw std::runtime_error(path + " is truncated: write it again with onnx-pipeline preprocess");
  return value;
}

torch::Tensor read_tensor(const std::string& path) {
  const uint16_t probe = 1;
  if (*reinterpret_cast<const uint8_t*>(&probe) != 1) throw std::runtime_error("this program needs a little-endian CPU");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  char magic[8];
  in.read(magic, sizeof(magic));
  if (!in || std::memcmp(magic, kMagic, sizeof(magic)) != 0)
    throw std::runtime_error(path + " is not a tensor file: write one with onnx-pipeline preprocess");
  const auto version = read_value<uint32_t>(in, path);
  const auto dtype = read_value<uint32_t>(in, path);
  const auto ndim = read_value<uint32_t>(in, path);
  read_value<uint32_t>(in, path);  // reserved
  if (version != kVersion || dtype != kFloat32 || ndim == 0 || ndim > kMaxDims)
    throw std::runtime_error(path + ": unsupported tensor file (version, dtype or rank)");
  std::vector<int64_t> dims(ndim);
  int64_t count = 1;
  for (auto& d : dims) {
    d = read_value<int64_t>(in, path);
    if (d <= 0 || d > (int64_t{1} << 31)) throw std::runtime_error(path + ": a dimension is out of range");
    count *= d;
    if (count > (int64_t{1} << 31)) throw std::runtime_error(path + ": the tensor is too large");
  }
  auto tensor = torch::empty(dims, torch::kFloat32);
  in.read(reinterpret_cast<char*>(tensor.data_ptr<float>()), count * static_cast<int64_t>(sizeof(float)));
  if (!in) throw std::runtime_error(path + " is truncated: write it again with onnx-pipeline preprocess");
  in.peek();
  if (!in.eof()) throw std::runtime_error(path + " holds more bytes than its header says");
  return tensor;
}

std::vector<std::string> read_labels(const std::string& path) {
  std::vector<std::string> labels;
  if (path.empty()) return labels;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    labels.push_back(line);
  }
  return labels;
}

std::string json_string(const std::string& text) {
  std::ostringstream out;
  out << '"';
  for (const unsigned char c : text) {
    switch (c) {
      case '"': out << "\\\""; break;
      case '\\': out << "\\\\"; break;
      case '\n': out << "\\n"; break;
      case '\r': out << "\\r"; break;
      case '\t': out << "\\t"; break;
      default:
        if (c < 0x20) {
          char buffer[8];
          std::snprintf(buffer, sizeof(buffer), "\\u%04x", c);
          out << buffer;
        } else {
          out << c;
        }
    }
  }
  out << '"';
  return out.str();
}

torch::Tensor first_output(const c10::IValue& value) {
  if (value.isTensor()) return value.toTensor();
  if (value.isTuple()) return value.toTupleRef().elements().at(0).toTensor();
  if (value.isList()) return value.toListRef().at(0).toTensor();
  throw std::runtime_error("the model returned neither a tensor nor a tuple of tensors");
}

// Probabilities as onnx-pipeline's runtime computes them: the outputs as they are when they already are
// probabilities (in [0, 1], rows summing to 1), else their softmax.
torch::Tensor probabilities(const torch::Tensor& output) {
  auto values = output.to(torch::kFloat64).reshape({output.size(0), -1});
  const bool in_range = values.ge(0).all().item<bool>() && values.le(1).all().item<bool>();
  if (in_range && (values.sum(1) - 1).abs().le(1e-3).all().item<bool>()) return values;
  return torch::softmax(values, 1);
}

struct Options {
  std::string model, input, labels;
  int64_t top_k = 5;
  int repeat = 0;
};

Options parse(int argc, char** argv) {
  if (argc < 3) throw std::invalid_argument("usage: classify MODEL.pt INPUT.bin [--labels FILE] [--top-k K] [--repeat N]");
  Options options{argv[1], argv[2]};
  for (int i = 3; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--labels") options.labels = value;
    else if (flag == "--top-k") options.top_k = std::stoll(value);
    else if (flag == "--repeat") options.repeat = std::stoi(value);
    else throw std::invalid_argument("unknown option " + flag);
  }
  if (options.top_k < 1 || options.repeat < 0) throw std::invalid_argument("--top-k must be >= 1 and --repeat >= 0");
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse(argc, argv);
    torch::jit::script::Module model = torch::jit::load(options.model, torch::kCPU);
    model.eval();
    const auto labels = read_labels(options.labels);
    const auto input = read_tensor(options.input);
    torch::NoGradGuard no_grad;
    const std::vector<torch::jit::IValue> inputs{input};
    torch::Tensor output = first_output(model.forward(inputs));
    std::vector<double> latencies;
    for (int i = 0; i < std::min(options.repeat, 10); ++i) output = first_output(model.forward(inputs));  // warm-up
    for (int i = 0; i < options.repeat; ++i) {
      const auto start = std::chrono::steady_clock::now();
      output = first_output(model.forward(inputs));
      latencies.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    const auto probs = probabilities(output);
    const int64_t k = std::min<int64_t>(options.top_k, probs.size(1));
    std::cout << "{\"model\": " << json_string(options.model) << ", \"input\": " << json_string(options.input)
              << ", \"predictions\": [";
    for (int64_t row = 0; row < probs.size(0); ++row) {
      const auto top = probs[row].topk(k);
      const auto values = std::get<0>(top);
      const auto indices = std::get<1>(top);
      std::cout << (row ? ", " : "") << "{\"top_k\": [";
      for (int64_t j = 0; j < k; ++j) {
        const int64_t id = indices[j].item<int64_t>();
        const std::string name = id < static_cast<int64_t>(labels.size()) ? json_string(labels[id]) : "null";
        std::cout << (j ? ", " : "") << "{\"class_id\": " << id << ", \"class_name\": " << name
                  << ", \"probability\": " << std::setprecision(9) << values[j].item<double>() << "}";
      }
      std::cout << "]}";
    }
    std::cout << "]";
    if (!latencies.empty()) {
      std::sort(latencies.begin(), latencies.end());
      const double mean = std::accumulate(latencies.begin(), latencies.end(), 0.0) / latencies.size();
      std::cout << ", \"latency_ms\": {\"runs\": " << latencies.size() << ", \"mean\": " << mean
                << ", \"p50\": " << latencies[latencies.size() / 2] << ", \"min\": " << latencies.front() << "}";
    }
    std::cout << "}" << std::endl;
    return 0;
  } catch (const std::invalid_argument& error) {
    std::cerr << "error: " << error.what() << std::endl;
    return 2;
  } catch (const std::exception& error) {
    std::string message = error.what();
    message = message.substr(0, message.find('\n'));
    std::cerr << "error: " << message << std::endl;
    return 1;
  }
}
