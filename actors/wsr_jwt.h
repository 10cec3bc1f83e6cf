//  wsr_jwt — (placeholder)
#ifndef WSR_JWT_H_INCLUDED
#define WSR_JWT_H_INCLUDED
#endif
