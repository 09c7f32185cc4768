// Structural check of a .ptd (ExecuTorch FlatTensor) file before the runtime parses it.
//
// Why: executorch's FlatTensorDataMap trusts the flatbuffer's offsets, so a corrupt .ptd can crash the
// process inside the runtime; this walks the same structure with bounds checks first, so a damaged
// weights file is reported as one error line instead.
#pragma once

#include <string>

namespace tq {

// "" if the file's header, flatbuffer (tables, vectors, strings) and segment ranges are consistent,
// else what is wrong.
std::string check_ptd_structure(const std::string& path);

}  // namespace tq
