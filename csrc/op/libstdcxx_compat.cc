// Keeps the library loadable with the libstdc++ that manylinux_2_28 allows (GLIBCXX_3.4.24).
// Built with GCC >= 11, std::allocator<T>::allocate refers to std::__throw_bad_array_new_length,
// which only libstdc++ 3.4.29 exports; a hidden local definition (same behaviour: it throws
// std::bad_array_new_length, a class libstdc++ has had since 3.4.21) resolves that reference
// inside the library instead. tests/runtime/test_packaging.py checks the symbol versions.
#include <new>

#if defined(__GLIBCXX__) && defined(_GLIBCXX_RELEASE) && _GLIBCXX_RELEASE >= 11
namespace std {
__attribute__((visibility("hidden"), noreturn)) void __throw_bad_array_new_length() {
  throw bad_array_new_length();
}
}  // namespace std
#endif
