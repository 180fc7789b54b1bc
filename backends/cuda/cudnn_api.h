/* cuDNN's calls as cudnn*.c make them, through pointers that the first
 * plan fills from libcudnn.so.9 (cudnn_api.c): the module links no cuDNN,
 * so where cuDNN is missing it still loads and runs everything but the
 * planned ops, which then say what is missing. Include after cudnn.h:
 * each call's name becomes its pointer. */
#ifndef LOOM_BACKENDS_CUDA_CUDNN_API_H
#define LOOM_BACKENDS_CUDA_CUDNN_API_H

#include <cudnn.h>

#define LOOM_CUDNN_CALLS(X)                                                                                          \
  X(cudnnGetErrorString)                                                                                           \
  X(cudnnGetLastErrorString)                                                                                       \
  X(cudnnCreate)                                                                                                   \
  X(cudnnDestroy)                                                                                                  \
  X(cudnnSetStream)                                                                                                \
  X(cudnnCreateTensorDescriptor)                                                                                   \
  X(cudnnDestroyTensorDescriptor)                                                                                  \
  X(cudnnSetTensor4dDescriptor)                                                                                    \
  X(cudnnCreateFilterDescriptor)                                                                                   \
  X(cudnnDestroyFilterDescriptor)                                                                                  \
  X(cudnnSetFilter4dDescriptor)                                                                                    \
  X(cudnnCreateConvolutionDescriptor)                                                                              \
  X(cudnnDestroyConvolutionDescriptor)                                                                             \
  X(cudnnSetConvolution2dDescriptor)                                                                               \
  X(cudnnSetConvolutionMathType)                                                                                   \
  X(cudnnGetConvolutionForwardAlgorithm_v7)                                                                        \
  X(cudnnGetConvolutionBackwardDataAlgorithm_v7)                                                                   \
  X(cudnnGetConvolutionBackwardFilterAlgorithm_v7)                                                                 \
  X(cudnnFindConvolutionForwardAlgorithmEx)                                                                        \
  X(cudnnFindConvolutionBackwardDataAlgorithmEx)                                                                   \
  X(cudnnFindConvolutionBackwardFilterAlgorithmEx)                                                                 \
  X(cudnnGetConvolutionForwardWorkspaceSize)                                                                       \
  X(cudnnGetConvolutionBackwardDataWorkspaceSize)                                                                  \
  X(cudnnGetConvolutionBackwardFilterWorkspaceSize)                                                                \
  X(cudnnConvolutionForward)                                                                                       \
  X(cudnnConvolutionBackwardData)                                                                                  \
  X(cudnnConvolutionBackwardFilter)                                                                                \
  X(cudnnConvolutionBackwardBias)                                                                                  \
  X(cudnnAddTensor)                                                                                                \
  X(cudnnBatchNormalizationForwardTraining)                                                                        \
  X(cudnnBatchNormalizationForwardInference)                                                                       \
  X(cudnnBatchNormalizationBackward)

typedef struct loom_cudnn_api {
#define LOOM_CUDNN_POINTER(name) __typeof__(name) *p_##name;
  LOOM_CUDNN_CALLS(LOOM_CUDNN_POINTER)
#undef LOOM_CUDNN_POINTER
} loom_cudnn_api;

extern loom_cudnn_api loom_cudnn;

/* Loads libcudnn.so.9 and fills loom_cudnn, once per process (the module's
 * RUNPATH names where CMake found it; then the loader's search path); 0,
 * or LOOM_ENOTSUP naming what is missing, every time after a failure. */
int loom_cudnn_load(void);

#ifndef LOOM_CUDNN_API_DEFINE
#define LOOM_CUDNN_CALL(name) (*loom_cudnn.p_##name)
#define cudnnGetErrorString LOOM_CUDNN_CALL(cudnnGetErrorString)
#define cudnnGetLastErrorString LOOM_CUDNN_CALL(cudnnGetLastErrorString)
#define cudnnCreate LOOM_CUDNN_CALL(cudnnCreate)
#define cudnnDestroy LOOM_CUDNN_CALL(cudnnDestroy)
#define cudnnSetStream LOOM_CUDNN_CALL(cudnnSetStream)
#define cudnnCreateTensorDescriptor LOOM_CUDNN_CALL(cudnnCreateTensorDescriptor)
#define cudnnDestroyTensorDescriptor LOOM_CUDNN_CALL(cudnnDestroyTensorDescriptor)
#define cudnnSetTensor4dDescriptor LOOM_CUDNN_CALL(cudnnSetTensor4dDescriptor)
#define cudnnCreateFilterDescriptor LOOM_CUDNN_CALL(cudnnCreateFilterDescriptor)
#define cudnnDestroyFilterDescriptor LOOM_CUDNN_CALL(cudnnDestroyFilterDescriptor)
#define cudnnSetFilter4dDescriptor LOOM_CUDNN_CALL(cudnnSetFilter4dDescriptor)
#define cudnnCreateConvolutionDescriptor LOOM_CUDNN_CALL(cudnnCreateConvolutionDescriptor)
#define cudnnDestroyConvolutionDescriptor LOOM_CUDNN_CALL(cudnnDestroyConvolutionDescriptor)
#define cudnnSetConvolution2dDescriptor LOOM_CUDNN_CALL(cudnnSetConvolution2dDescriptor)
#define cudnnSetConvolutionMathType LOOM_CUDNN_CALL(cudnnSetConvolutionMathType)
#define cudnnGetConvolutionForwardAlgorithm_v7 LOOM_CUDNN_CALL(cudnnGetConvolutionForwardAlgorithm_v7)
#define cudnnGetConvolutionBackwardDataAlgorithm_v7 LOOM_CUDNN_CALL(cudnnGetConvolutionBackwardDataAlgorithm_v7)
#define cudnnGetConvolutionBackwardFilterAlgorithm_v7 LOOM_CUDNN_CALL(cudnnGetConvolutionBackwardFilterAlgorithm_v7)
#define cudnnFindConvolutionForwardAlgorithmEx LOOM_CUDNN_CALL(cudnnFindConvolutionForwardAlgorithmEx)
#define cudnnFindConvolutionBackwardDataAlgorithmEx LOOM_CUDNN_CALL(cudnnFindConvolutionBackwardDataAlgorithmEx)
#define cudnnFindConvolutionBackwardFilterAlgorithmEx LOOM_CUDNN_CALL(cudnnFindConvolutionBackwardFilterAlgorithmEx)
#define cudnnGetConvolutionForwardWorkspaceSize LOOM_CUDNN_CALL(cudnnGetConvolutionForwardWorkspaceSize)
#define cudnnGetConvolutionBackwardDataWorkspaceSize LOOM_CUDNN_CALL(cudnnGetConvolutionBackwardDataWorkspaceSize)
#define cudnnGetConvolutionBackwardFilterWorkspaceSize LOOM_CUDNN_CALL(cudnnGetConvolutionBackwardFilterWorkspaceSize)
#define cudnnConvolutionForward LOOM_CUDNN_CALL(cudnnConvolutionForward)
#define cudnnConvolutionBackwardData LOOM_CUDNN_CALL(cudnnConvolutionBackwardData)
#define cudnnConvolutionBackwardFilter LOOM_CUDNN_CALL(cudnnConvolutionBackwardFilter)
#define cudnnConvolutionBackwardBias LOOM_CUDNN_CALL(cudnnConvolutionBackwardBias)
#define cudnnAddTensor LOOM_CUDNN_CALL(cudnnAddTensor)
#define cudnnBatchNormalizationForwardTraining LOOM_CUDNN_CALL(cudnnBatchNormalizationForwardTraining)
#define cudnnBatchNormalizationForwardInference LOOM_CUDNN_CALL(cudnnBatchNormalizationForwardInference)
#define cudnnBatchNormalizationBackward LOOM_CUDNN_CALL(cudnnBatchNormalizationBackward)
#endif

#endif
