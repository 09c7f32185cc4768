// Bounds-checked walk of a FlatTensor (.ptd) file; see ptd_check.h.
//
// Layout (extension/flat_tensor/serialize/flat_tensor.fbs and flat_tensor_header.h): a flatbuffer whose
// root offset and "FT01" identifier occupy bytes 0..8, the header "FH01" (length, flatbuffer offset and
// size, segment base offset and size) at byte 8, the rest of the flatbuffer up to
// flatbuffer_offset + flatbuffer_size, then the data segments.
//   table FlatTensor { version: uint32; segments: [DataSegment]; named_data: [NamedData]; }
//   table DataSegment { offset: uint64; size: uint64; }
//   table NamedData { key: string; segment_index: uint32; tensor_layout: TensorLayout; }
//   table TensorLayout { scalar_type: int8; sizes: [int32]; dim_order: [uint8]; }
#include "ptd_check.h"

#include <sys/stat.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <vector>

namespace tq {

namespace {

struct Buf {
  std::vector<uint8_t> b;

  bool has(uint64_t pos, uint64_t n) const { return pos <= b.size() && n <= b.size() - pos; }
  template <typename T>
  bool read(uint64_t pos, T* out) const {
    if (!has(pos, sizeof(T))) return false;
    std::memcpy(out, b.data() + pos, sizeof(T));
    return true;
  }

  // Position of table field `i`, 0 if absent; false if the table or vtable is out of bounds.
  bool field(uint64_t table, unsigned i, uint64_t* pos) const {
    int32_t soff;
    if (!read(table, &soff)) return false;
    int64_t vt = static_cast<int64_t>(table) - soff;
    uint16_t vt_len, tbl_len;
    if (vt < 0 || !read(static_cast<uint64_t>(vt), &vt_len) || !read(static_cast<uint64_t>(vt) + 2, &tbl_len) ||
        vt_len < 4 || !has(static_cast<uint64_t>(vt), vt_len) || !has(table, tbl_len))
      return false;
    *pos = 0;
    if (4 + 2 * i + 2 > vt_len) return true;  // field not in this (older) vtable
    uint16_t off = 0;
    read(static_cast<uint64_t>(vt) + 4 + 2 * i, &off);
    if (off == 0) return true;
    if (off + 1u > tbl_len) return false;
    *pos = table + off;
    return true;
  }

  // Follows an offset field to its target (table, vector or string).
  bool deref(uint64_t pos, uint64_t* target) const {
    uint32_t rel;
    if (!read(pos, &rel)) return false;
    *target = pos + rel;
    return *target < b.size();
  }

  bool vector(uint64_t field_pos, uint64_t elem_size, uint64_t* start, uint32_t* len) const {
    uint64_t v;
    if (!deref(field_pos, &v) || !read(v, len)) return false;
    *start = v + 4;
    return has(*start, static_cast<uint64_t>(*len) * elem_size);
  }
};

}  // namespace

std::string check_ptd_structure(const std::string& path) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) return "cannot stat file";
  uint64_t file_size = static_cast<uint64_t>(st.st_size);
  std::ifstream f(path, std::ios::binary);
  uint8_t head[48] = {};
  if (!f.read(reinterpret_cast<char*>(head), sizeof head)) return "file too small for a .ptd header";
  if (std::memcmp(head + 8, "FH01", 4) != 0) return "no FlatTensor header (not a .ptd)";
  uint32_t hlen;
  uint64_t fb_off, fb_size, seg_base, seg_size;
  std::memcpy(&hlen, head + 12, 4);
  std::memcpy(&fb_off, head + 16, 8);
  std::memcpy(&fb_size, head + 24, 8);
  std::memcpy(&seg_base, head + 32, 8);
  std::memcpy(&seg_size, head + 40, 8);
  uint64_t fb_end = fb_off + fb_size;
  if (hlen < 40 || fb_end < fb_off || fb_end > file_size || fb_end > (uint64_t(1) << 32))
    return "header points outside the file";
  if (seg_base < fb_end || seg_base + seg_size < seg_base || seg_base + seg_size > file_size)
    return "data segments extend past the end of the file (truncated?)";

  Buf buf;
  buf.b.resize(fb_end);
  f.seekg(0);
  if (!f.read(reinterpret_cast<char*>(buf.b.data()), static_cast<std::streamsize>(fb_end))) return "cannot read";

  uint64_t root, p;
  if (!buf.deref(0, &root)) return "bad root offset";
  // segments
  uint64_t seg_start = 0;
  uint32_t n_seg = 0;
  if (!buf.field(root, 1, &p)) return "bad FlatTensor table";
  if (p && !buf.vector(p, 4, &seg_start, &n_seg)) return "bad segments vector";
  for (uint32_t i = 0; i < n_seg; ++i) {
    uint64_t t, fo, fs;
    uint64_t off = 0, size = 0;
    if (!buf.deref(seg_start + 4ull * i, &t) || !buf.field(t, 0, &fo) || !buf.field(t, 1, &fs) ||
        (fo && !buf.read(fo, &off)) || (fs && !buf.read(fs, &size)))
      return "bad segment " + std::to_string(i);
    if (off + size < off || off + size > seg_size) return "segment " + std::to_string(i) + " lies outside the file";
  }
  // named data
  uint64_t nd_start = 0;
  uint32_t n_nd = 0;
  if (!buf.field(root, 2, &p)) return "bad FlatTensor table";
  if (p && !buf.vector(p, 4, &nd_start, &n_nd)) return "bad named_data vector";
  for (uint32_t i = 0; i < n_nd; ++i) {
    uint64_t t, fk, fi, fl, s, l;
    uint32_t slen, index = 0;
    std::string bad = "bad named_data entry " + std::to_string(i);
    if (!buf.deref(nd_start + 4ull * i, &t) || !buf.field(t, 0, &fk) || !buf.field(t, 1, &fi) || !buf.field(t, 2, &fl))
      return bad;
    if (!fk || !buf.vector(fk, 1, &s, &slen) || !buf.has(s + slen, 1) || buf.b[s + slen] != 0) return bad + " (key)";
    if (fi && !buf.read(fi, &index)) return bad;
    if (index >= n_seg) return bad + " (segment index)";
    if (fl) {  // tensor layout: two vectors
      uint64_t fsz, fdo, vs;
      uint32_t vl;
      if (!buf.deref(fl, &l) || !buf.field(l, 1, &fsz) || !buf.field(l, 2, &fdo) ||
          (fsz && !buf.vector(fsz, 4, &vs, &vl)) || (fdo && !buf.vector(fdo, 1, &vs, &vl)))
        return bad + " (tensor layout)";
    }
  }
  return "";
}

}  // namespace tq
