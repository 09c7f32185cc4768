// Names the runner expects in a program written by tq-export: the two lowered methods and the constant
// methods that carry metadata. Kept in one place so they follow the exporter easily.
//
// Expected forms (constant methods return ExecuTorch primitive values; lists come back flattened as
// several outputs):
//   get_tq_export_version  string or int    required: marks a program made by tq-export
//   get_max_seq_len        int              required: prompt + generated tokens must fit
//   get_max_prefill        int              most tokens per prefill call (else the planned bound of T)
//   get_vocab_size         int              token ids must be < this (falls back to the tokenizer's)
//   get_bos_id             int              prepended to the prompt when >= 0
//   get_eos_ids            int or list      generation stops at any of them (absent: the tokenizer's
//                                           <|im_end|>/<|endoftext|>/</s>; an empty list: none)
//   get_k_bits, get_v_bits int              reported only
//   get_model_name, get_dtype, get_method_signatures   strings, reported only (--info)
//   get_shared_buffers     string(s)        FQNs of mutable buffers prefill and decode must share; one
//                                           string per buffer, or one string separated by ',', ';',
//                                           whitespace or newlines
//
// Method signatures (by position; names of inputs are not stored in a .pte):
//   prefill(tokens int64 [1, T], input_pos int64 [T] (or [1]: start position), temperature float32 [1],
//           [extra])
//   decode (tokens int64 [1, 1], input_pos int64 [1], temperature float32 [1], [extra])
//   -> output 0: next token id, int64 of any shape (its last element is used), sampled on the GPU;
//      or logits (float32/bf16/fp16, last dim = vocab) which the runner samples on the host.
//   [extra], if the method has a 4th input: int64 -> a per-step seed (--seed + start position of the
//                                           call, as tq-export's sampler expects);
//                                           float32 -> uniform [0, 1) numbers from --seed.
#pragma once

namespace tq::meta {

inline constexpr const char* kPrefill = "prefill";
inline constexpr const char* kDecode = "decode";

inline constexpr const char* kMarker = "get_tq_export_version";
inline constexpr const char* kMaxSeqLen = "get_max_seq_len";
inline constexpr const char* kMaxPrefill = "get_max_prefill";
inline constexpr const char* kDtype = "get_dtype";
inline constexpr const char* kSignatures = "get_method_signatures";
inline constexpr const char* kVocabSize = "get_vocab_size";
inline constexpr const char* kBosId = "get_bos_id";
inline constexpr const char* kEosIds = "get_eos_ids";
inline constexpr const char* kKBits = "get_k_bits";
inline constexpr const char* kVBits = "get_v_bits";
inline constexpr const char* kModelName = "get_model_name";
inline constexpr const char* kSharedBuffers = "get_shared_buffers";

// Input positions in prefill/decode.
inline constexpr int kInTokens = 0;
inline constexpr int kInPos = 1;
inline constexpr int kInTemperature = 2;
inline constexpr int kInExtra = 3;

// Default file names next to the .pte.
inline constexpr const char* kDefaultData = "aoti_cuda_blob.ptd";
inline constexpr const char* kDefaultTokenizer = "tokenizer.json";

}  // namespace tq::meta
