// Knobs of the emulator that tests turn (exposed to Python by module.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gf {
namespace emu {

struct LaunchRecord {
  std::string kernel;
  unsigned grid[3];
  unsigned block[3];
  size_t dynamic_smem;
};

void set_num_sms(int n);  // what cudaDeviceGetAttribute reports (default 3)
int num_sms();
void set_block_order(bool shuffle, uint64_t seed);  // index order by default
void set_launch_log(bool on);                       // also clears the log
std::vector<LaunchRecord> launch_log();
const char* sanitizer();  // "none", "address" (ASan+UBSan) or "race"

}  // namespace emu
}  // namespace gf
